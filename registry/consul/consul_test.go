package consul

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/beacon-go/beacon/internal/testserver"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/registrytest"
)

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// uniqueName returns a service name made from the test's name.
func uniqueName(t testing.TB) string {
	name := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			return r
		}
		return '-'
	}, strings.ToLower(t.Name()))
	return fmt.Sprintf("%s-%d", name, time.Now().UnixNano()%1e6)
}

func service(name, version string, first, n int) *registry.Service {
	cfg := &registrytest.Config{Address: func(i int) string { return fmt.Sprintf("127.0.0.1:%d", 20000+i) }}
	return registrytest.Service(cfg, name, version, first, n)
}

func nodeIDs(ss []*registry.Service) []string {
	var ids []string
	for _, s := range ss {
		for _, n := range s.Nodes {
			ids = append(ids, n.ID)
		}
	}
	slices.Sort(ids)
	return ids
}

// wantNodes waits until GetService(name) shows exactly ids.
func wantNodes(t testing.TB, r registry.Registry, wait time.Duration, name string, ids ...string) {
	t.Helper()
	slices.Sort(ids)
	registrytest.Eventually(t, wait, func() error {
		got, err := r.GetService(ctxT(t), name)
		if len(ids) == 0 && errors.Is(err, registry.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if g := nodeIDs(got); !slices.Equal(g, ids) {
			return fmt.Errorf("nodes %v, want %v", g, ids)
		}
		return nil
	})
}

func TestNewUnreachable(t *testing.T) {
	t.Parallel()
	// A port nobody listens on, and a listener that accepts but never
	// answers: both must fail in bounded time with ErrUnavailable.
	closed, err := testserver.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	tests := []struct {
		name string
		addr string
	}{
		{"refused", fmt.Sprintf("127.0.0.1:%d", closed)},
		{"silent", silent.Addr().String()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			r, err := New(context.Background(), WithAddrs(tc.addr), WithConnectTimeout(300*time.Millisecond), WithLogger(testLogger(t)))
			took := time.Since(start)
			if err == nil {
				r.Close()
				t.Fatal("New succeeded without an agent")
			}
			if !errors.Is(err, registry.ErrUnavailable) {
				t.Errorf("err = %v, want ErrUnavailable", err)
			}
			if took > 2*time.Second {
				t.Errorf("New took %v with a 300ms connect timeout", took)
			}
			t.Logf("failed after %v: %v", took, err)
		})
	}
	// A silent first address leaves time for the next one.
	start := time.Now()
	r, err := New(context.Background(), WithAddrs(silent.Addr().String(), agent.Addr()), WithConnectTimeout(time.Second), WithLogger(testLogger(t)))
	if err != nil {
		t.Fatalf("New with a silent first address: %v", err)
	}
	r.Close()
	t.Logf("silent first address, live second: New took %v", time.Since(start))
	// The caller's deadline bounds New too.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start = time.Now()
	if _, err := New(ctx, WithAddrs(silent.Addr().String())); !errors.Is(err, registry.ErrUnavailable) || time.Since(start) > 2*time.Second {
		t.Errorf("New with a 200ms context: %v after %v", err, time.Since(start))
	}
}

func TestBadOptions(t *testing.T) {
	t.Parallel()
	// A datacenter consul does not know: New fails, as for an unreachable agent.
	if _, err := New(ctxT(t), WithAddrs(agent.Addr()), WithDatacenter("nowhere")); !errors.Is(err, registry.ErrUnavailable) {
		t.Errorf("unknown datacenter: err = %v, want ErrUnavailable", err)
	}
	if _, err := New(context.Background(), WithAddrs("ftp://127.0.0.1:1")); err == nil || errors.Is(err, registry.ErrUnavailable) {
		t.Errorf("unknown scheme: err = %v, want a configuration error", err)
	}
	if _, err := New(context.Background(), WithAddrs(agent.Addr()), WithTLSFiles("/nonexistent/ca.pem", "", "")); err == nil {
		t.Error("missing CA file accepted")
	}
}

func TestFailoverAddress(t *testing.T) {
	t.Parallel()
	dead, err := testserver.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	r := newRegistry(t, WithAddrs(fmt.Sprintf("127.0.0.1:%d", dead)), WithConnectTimeout(2*time.Second))
	// newRegistry put the live agent first; build one with the dead one first.
	r2, err := New(ctxT(t), WithAddrs(fmt.Sprintf("127.0.0.1:%d", dead), agent.Addr()), WithLogger(testLogger(t)))
	if err != nil {
		t.Fatalf("New with a dead first address: %v", err)
	}
	defer r2.Close()
	name := uniqueName(t)
	s := service(name, "1", 0, 1)
	if err := r2.Register(ctxT(t), s, registry.RegisterTTL(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	wantNodes(t, r, 5*time.Second, name, s.Nodes[0].ID)
	if err := r2.Deregister(ctxT(t), s); err != nil {
		t.Fatal(err)
	}
	wantNodes(t, r, 5*time.Second, name)
}

func TestOptions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		opts []Option
	}{
		{"stale", []Option{WithStale(true)}},
		{"datacenter", []Option{WithDatacenter("dc1")}},
		{"token without ACLs", []Option{WithToken("anything")}},
		{"wait time", []Option{WithWaitTime(2 * time.Second)}},
		{"deregister critical after", []Option{WithDeregisterCriticalAfter(2 * time.Minute)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRegistry(t, tc.opts...)
			name := uniqueName(t)
			s := service(name, "1", 0, 1)
			if err := r.Register(ctxT(t), s, registry.RegisterTTL(10*time.Second)); err != nil {
				t.Fatal(err) // registration is agent-local: no datacenter involved
			}
			defer r.Deregister(ctxT(t), s)
			wantNodes(t, r, 5*time.Second, name, s.Nodes[0].ID)
			ev := registrytest.Watch(t, r, registry.WatchService(name))
			ev.Expect(t, 5*time.Second, registry.Create, s.Nodes[0].ID)
		})
	}
}

// TestACLToken runs an agent with ACLs on and a read-only token: with that
// token registration is refused (so the token is sent), with the management
// token it works.
func TestACLToken(t *testing.T) {
	t.Parallel()
	const (
		rootToken     = "8b7a1c52-0d52-4d9c-9a40-53e1c0f1a001"
		readOnlyToken = "8b7a1c52-0d52-4d9c-9a40-53e1c0f1a002"
	)
	// default_policy allow: the testserver's readiness probe is anonymous.
	a := testserver.MustStartConsul(t, testserver.WithArgs(
		`-hcl=acl { enabled = true default_policy = "allow" tokens { initial_management = "`+rootToken+`" } }`))
	cfg := api.DefaultNonPooledConfig()
	cfg.Address, cfg.Token = a.Addr(), rootToken
	admin, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cfg.Transport.CloseIdleConnections()
	pol, _, err := admin.ACL().PolicyCreate(&api.ACLPolicy{Name: "read-only",
		Rules: `service_prefix "" { policy = "read" } node_prefix "" { policy = "read" }`}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := admin.ACL().TokenCreate(&api.ACLToken{SecretID: readOnlyToken, Policies: []*api.ACLTokenPolicyLink{{ID: pol.ID}}}, nil); err != nil {
		t.Fatal(err)
	}
	name := uniqueName(t)
	s := service(name, "1", 0, 1)

	ro, err := New(ctxT(t), WithAddrs(a.Addr()), WithToken(readOnlyToken), WithLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if err := ro.Register(ctxT(t), s, registry.RegisterTTL(10*time.Second)); !errors.Is(err, registry.ErrPermission) || errors.Is(err, registry.ErrUnavailable) {
		t.Errorf("Register with a read-only token: err = %v, want ErrPermission (403), not ErrUnavailable", err)
	}

	r, err := New(ctxT(t), WithAddrs(a.Addr()), WithToken(rootToken), WithLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Register(ctxT(t), s, registry.RegisterTTL(10*time.Second)); err != nil {
		t.Fatalf("Register with the management token: %v", err)
	}
	if err := r.Register(ctxT(t), s, registry.RegisterTTL(10*time.Second)); err != nil {
		t.Fatalf("heartbeat with the management token: %v", err)
	}
	wantNodes(t, ro, 5*time.Second, name, s.Nodes[0].ID) // reads are allowed
}

// TestRecordsSurviveConsul registers records that need the blob and odd keys
// through a real agent and reads them back unchanged.
func TestRecordsSurviveConsul(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	name := uniqueName(t)
	s := testService(map[string]string{"team": "a", "a.b": "dots", "grüß": "unicode", "k": strings.Repeat("v", 512)},
		map[string]string{"zone": "z1", "rack/row": "3"}, 40)
	s.Name = name
	s.Nodes[0].ID = name + "-n1"
	if err := r.Register(ctxT(t), s, registry.RegisterTTL(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	defer r.Deregister(ctxT(t), s)
	wantNodes(t, r, 5*time.Second, name, s.Nodes[0].ID)
	got, err := r.GetService(ctxT(t), name)
	if err != nil {
		t.Fatal(err)
	}
	one := registry.Flatten(got)[s.Nodes[0].ID]
	if !registry.SameNode(one, s) {
		t.Errorf("record changed through consul:\n got %+v\nwant %+v", one, s)
	}
	// Too large: refused before anything is written.
	big := testService(nil, nil, 0)
	big.Name = name + "-big"
	big.Nodes[0].ID = name + "-big-n1"
	rng := rand.New(rand.NewPCG(5, 6))
	big.Metadata = map[string]string{}
	for i := range 64 {
		big.Metadata[fmt.Sprintf("k%d", i)] = randomText(rng, 512)
	}
	err = r.Register(ctxT(t), big, registry.RegisterTTL(10*time.Second))
	var ve *registry.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("oversized record: err = %v, want *registry.ValidationError", err)
	}
	if _, err := r.GetService(ctxT(t), big.Name); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("refused record was written: %v", err)
	}
}

// TestHeartbeatAndChange checks what Register sends: an unchanged node is a
// TTL update (consul's service ModifyIndex stays), changed data a new
// registration; TTL 0 registers without a check.
func TestHeartbeatAndChange(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	raw := rawClient(t, agent.Addr())
	name := uniqueName(t)
	s := service(name, "1", 0, 1)
	id := s.Nodes[0].ID
	modIndex := func() uint64 {
		svc, _, err := raw.Agent().Service(id, nil)
		if err != nil {
			t.Fatal(err)
		}
		return svc.ModifyIndex
	}
	if err := r.Register(ctxT(t), s, registry.RegisterTTL(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	checks, err := raw.Agent().Checks()
	if err != nil {
		t.Fatal(err)
	}
	c := checks[checkID(id)]
	if c == nil || c.Status != api.HealthPassing || c.ServiceID != id {
		t.Fatalf("TTL check after Register = %+v, want passing for %s", c, id)
	}
	first := modIndex()
	for range 3 {
		if err := r.Register(ctxT(t), s, registry.RegisterTTL(5*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if m := modIndex(); m != first {
		t.Errorf("heartbeats re-registered the service (modify index %d -> %d)", first, m)
	}
	s.Nodes[0].Metadata["zone"] = "changed"
	if err := r.Register(ctxT(t), s, registry.RegisterTTL(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if svc, _, _ := raw.Agent().Service(id, nil); svc.Meta["n-zone"] != "changed" {
		t.Errorf("changed data not registered: %v", svc.Meta)
	}
	// TTL 0: no check.
	if err := r.Register(ctxT(t), s); err != nil {
		t.Fatal(err)
	}
	checks, _ = raw.Agent().Checks()
	if _, ok := checks[checkID(id)]; ok {
		t.Error("TTL 0 kept the TTL check")
	}
	wantNodes(t, r, 5*time.Second, name, id)
	if err := r.Deregister(ctxT(t), s); err != nil {
		t.Fatal(err)
	}
	wantNodes(t, r, 5*time.Second, name)
}

// TestHeartbeatAfterAgentLostService: a service removed behind the
// registry's back is registered again by the next heartbeat.
func TestHeartbeatAfterAgentLostService(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	raw := rawClient(t, agent.Addr())
	name := uniqueName(t)
	s := service(name, "1", 0, 1)
	if err := r.Register(ctxT(t), s, registry.RegisterTTL(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := raw.Agent().ServiceDeregister(s.Nodes[0].ID); err != nil {
		t.Fatal(err)
	}
	wantNodes(t, r, 5*time.Second, name)
	if err := r.Register(ctxT(t), s, registry.RegisterTTL(5*time.Second)); err != nil {
		t.Fatalf("heartbeat after the agent lost the service: %v", err)
	}
	wantNodes(t, r, 5*time.Second, name, s.Nodes[0].ID)
	r.Deregister(ctxT(t), s)
}

// TestDeregisterOtherService: a node ID owned by another service name is
// left alone.
func TestDeregisterOtherService(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	name := uniqueName(t)
	s := service(name, "1", 0, 1)
	if err := r.Register(ctxT(t), s, registry.RegisterTTL(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	defer r.Deregister(ctxT(t), s)
	other := &registry.Service{Name: name + "-other", Nodes: []*registry.Node{{ID: s.Nodes[0].ID}}}
	if err := r.Deregister(ctxT(t), other); err != nil {
		t.Fatal(err)
	}
	wantNodes(t, r, 5*time.Second, name, s.Nodes[0].ID)
}

// TestForeignAndBadRecords: services written by other tools are found;
// unreadable ones are skipped with a warning and never break the rest.
func TestForeignAndBadRecords(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	r := newRegistry(t, WithLogger(slog.New(rec)))
	raw := rawClient(t, agent.Addr())
	name := uniqueName(t)
	hugeTags := make([]string, 200)
	for i := range hugeTags {
		hugeTags[i] = fmt.Sprintf("%d-%s", i, strings.Repeat("t", 1000))
	}
	regs := []*api.AgentServiceRegistration{
		{ID: name + "-plain", Name: name, Port: 8080}, // node address, no meta
		{ID: name + "-meta", Name: name, Address: "127.0.0.2", Port: 8081, Meta: map[string]string{"version": "7", "env": "prod"}},
		{ID: name + "-tags", Name: name, Address: "127.0.0.3", Port: 8082, Tags: hugeTags},
		{ID: name + "-noport", Name: name, Address: "127.0.0.4"},                                                                                         // skipped: port 0
		{ID: name + "-garbage", Name: name, Address: "127.0.0.5", Port: 80, Meta: map[string]string{"beacon": "1", "b-0": "%%%not base64"}},              // skipped
		{ID: name + "-hole", Name: name, Address: "127.0.0.6", Port: 80, Meta: map[string]string{"beacon": "1", "b-0": "AAAA", "b-5": "AAAA"}},           // skipped
		{ID: name + "-badmeta", Name: name, Address: "127.0.0.7", Port: 80, Meta: map[string]string{"beacon": "1", "version": strings.Repeat("v", 200)}}, // skipped
	}
	for _, reg := range regs {
		if err := raw.Agent().ServiceRegister(reg); err != nil {
			t.Fatalf("register %s: %v", reg.ID, err)
		}
		defer raw.Agent().ServiceDeregister(reg.ID)
	}
	// A critical foreign node is hidden, a warning one is shown.
	crit := &api.AgentServiceRegistration{ID: name + "-crit", Name: name, Address: "127.0.0.8", Port: 80,
		Check: &api.AgentServiceCheck{TTL: "1h", Status: api.HealthCritical}}
	warn := &api.AgentServiceRegistration{ID: name + "-warn", Name: name, Address: "127.0.0.9", Port: 80,
		Check: &api.AgentServiceCheck{TTL: "1h", Status: api.HealthWarning}}
	for _, reg := range []*api.AgentServiceRegistration{crit, warn} {
		if err := raw.Agent().ServiceRegister(reg); err != nil {
			t.Fatal(err)
		}
		defer raw.Agent().ServiceDeregister(reg.ID)
	}
	node := "@" + testserver.ConsulNodeName
	want := []string{name + "-plain" + node, name + "-meta" + node, name + "-tags" + node, name + "-warn" + node}
	wantNodes(t, r, 5*time.Second, name, want...)
	got, _ := r.GetService(ctxT(t), name)
	for _, n := range registry.Flatten(got) {
		if n.Version != "" {
			t.Errorf("foreign node %s has version %q", n.Nodes[0].ID, n.Version)
		}
		switch n.Nodes[0].ID {
		case name + "-plain" + node:
			if n.Nodes[0].Address != "127.0.0.1:8080" {
				t.Errorf("plain node address %q, want the agent's 127.0.0.1:8080", n.Nodes[0].Address)
			}
		case name + "-meta" + node:
			if n.Nodes[0].Address != "127.0.0.2:8081" || n.Nodes[0].Metadata["env"] != "prod" {
				t.Errorf("meta node = %+v", n.Nodes[0])
			}
		}
	}
	if w := rec.count(slog.LevelWarn); w < 4 {
		t.Errorf("%d warnings for 4 unreadable records", w)
	}
	// Warned once per record, not per query.
	before := rec.count(slog.LevelWarn)
	for range 3 {
		r.GetService(ctxT(t), name)
	}
	if after := rec.count(slog.LevelWarn); after != before {
		t.Errorf("warnings repeated: %d -> %d", before, after)
	}
	// Listed, and watchable.
	list, err := r.ListServices(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(list, func(s *registry.Service) bool { return s.Name == name && s.Version == "" }) {
		t.Errorf("ListServices lacks %s", name)
	}
	ev := registrytest.Watch(t, r, registry.WatchService(name))
	for _, id := range want {
		ev.Expect(t, 5*time.Second, registry.Create, id)
	}
	// Critical -> passing shows the node; passing -> critical hides it.
	if err := raw.Agent().UpdateTTL("service:"+crit.ID, "", api.HealthPassing); err != nil {
		t.Fatal(err)
	}
	ev.Expect(t, 5*time.Second, registry.Create, crit.ID+node)
	if err := raw.Agent().UpdateTTL("service:"+crit.ID, "", api.HealthCritical); err != nil {
		t.Fatal(err)
	}
	ev.Expect(t, 5*time.Second, registry.Delete, crit.ID+node)
}

// TestSharedQueries: watchers of one service share one blocking query, and
// the loops stop when the last watcher goes.
func TestSharedQueries(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	name := uniqueName(t)
	var ws []registry.Watcher
	for range 5 {
		w, err := r.Watch(context.Background(), registry.WatchService(name))
		if err != nil {
			t.Fatal(err)
		}
		ws = append(ws, w)
	}
	r.watch.mu.Lock()
	n, subs := len(r.watch.services), len(r.watch.services[name].subs)
	r.watch.mu.Unlock()
	if n != 1 || subs != 5 {
		t.Fatalf("%d service queries with %d watchers, want 1 with 5", n, subs)
	}
	s := service(name, "1", 0, 1)
	if err := r.Register(ctxT(t), s, registry.RegisterTTL(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	defer r.Deregister(ctxT(t), s)
	for _, w := range ws {
		ev, err := w.Next()
		if err != nil || ev.Type != registry.Create || ev.Service.Nodes[0].ID != s.Nodes[0].ID {
			t.Fatalf("watcher got %+v, %v", ev, err)
		}
	}
	// Each watcher gets its own copy.
	all1, err := r.Watch(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	all2, err := r.Watch(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	registrytest.Eventually(t, 5*time.Second, func() error {
		r.watch.mu.Lock()
		defer r.watch.mu.Unlock()
		if r.watch.catalog == nil || len(r.watch.all) != 2 {
			return errors.New("no catalog watch for two all-services watchers")
		}
		if sw := r.watch.services[name]; sw == nil || !sw.held || len(sw.subs) != 5 {
			return errors.New("catalog watch does not share the service's query")
		}
		return nil
	})
	for _, w := range append(ws, all1, all2) {
		w.Stop()
	}
	registrytest.Eventually(t, 5*time.Second, func() error {
		r.watch.mu.Lock()
		defer r.watch.mu.Unlock()
		if len(r.watch.services) != 0 || r.watch.catalog != nil {
			return fmt.Errorf("%d service queries and catalog %v still running", len(r.watch.services), r.watch.catalog != nil)
		}
		return nil
	})
}

// TestConsulCLI: our services are plain consul services for consul's own
// CLI.
func TestConsulCLI(t *testing.T) {
	t.Parallel()
	bin := testserver.Require(t, "consul")
	r := newRegistry(t)
	name := uniqueName(t)
	s := service(name, "1.0.0", 0, 1)
	if err := r.Register(ctxT(t), s, registry.RegisterTTL(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	defer r.Deregister(ctxT(t), s)
	registrytest.Eventually(t, 5*time.Second, func() error {
		out, err := exec.CommandContext(ctxT(t), bin, "catalog", "services", "-http-addr="+agent.Addr()).CombinedOutput()
		if err != nil {
			return fmt.Errorf("consul catalog services: %v: %s", err, out)
		}
		if !slices.Contains(strings.Fields(string(out)), name) {
			return fmt.Errorf("consul catalog services does not list %s:\n%s", name, out)
		}
		return nil
	})
	out, err := exec.CommandContext(ctxT(t), bin, "catalog", "nodes", "-service="+name, "-http-addr="+agent.Addr()).CombinedOutput()
	if err != nil || !strings.Contains(string(out), testserver.ConsulNodeName) {
		t.Errorf("consul catalog nodes -service=%s: %v\n%s", name, err, out)
	}
}
