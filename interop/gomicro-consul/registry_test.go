package gomicroconsul

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"testing"
	"time"

	gmregistry "go-micro.dev/v5/registry"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/consul"
	"github.com/beacon-go/beacon/registry/registrytest"
)

// modes are the two watch shapes of Beacon's consul registry: a blocking
// query per service, and the shared feed of many services.
var modes = []struct {
	name string
	opts []consul.Option
}{
	{"own query", nil},
	{"feed", []consul.Option{consul.WithServiceQueries(0)}},
}

func endpoints() []*registry.Endpoint {
	return []*registry.Endpoint{{
		Name:     "Greeter.Hello",
		Request:  &registry.Value{Name: "HelloReq", Type: "HelloReq", Values: []*registry.Value{{Name: "name", Type: "string"}}},
		Response: &registry.Value{Name: "HelloRsp", Type: "HelloRsp", Values: []*registry.Value{{Name: "msg", Type: "string"}}},
		Metadata: map[string]string{"idempotent": "true"},
	}}
}

func gmEndpoints() []*gmregistry.Endpoint {
	return []*gmregistry.Endpoint{{
		Name:     "Greeter.Hello",
		Request:  &gmregistry.Value{Name: "HelloReq", Type: "HelloReq", Values: []*gmregistry.Value{{Name: "name", Type: "string"}}},
		Response: &gmregistry.Value{Name: "HelloRsp", Type: "HelloRsp", Values: []*gmregistry.Value{{Name: "msg", Type: "string"}}},
		Metadata: map[string]string{"stream": "false"},
	}}
}

// sameJSON reports whether a and b have the same JSON form (fields in any
// order: go-micro's structs order them differently).
func sameJSON(a, b any) bool {
	norm := func(v any) any {
		js, _ := json.Marshal(v)
		var out any
		json.Unmarshal(js, &out)
		return out
	}
	return reflect.DeepEqual(norm(a), norm(b))
}

// gmResults reads a go-micro watcher into a channel until it stops.
func gmResults(t *testing.T, w gmregistry.Watcher) <-chan *gmregistry.Result {
	ch := make(chan *gmregistry.Result, 1024)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(ch)
		for {
			r, err := w.Next()
			if err != nil {
				return
			}
			ch <- r
		}
	}()
	t.Cleanup(func() { w.Stop(); <-done })
	return ch
}

// gmWait waits for a go-micro watch result that ok accepts.
func gmWait(t *testing.T, ch <-chan *gmregistry.Result, what string, ok func(*gmregistry.Result) bool) *gmregistry.Result {
	t.Helper()
	timer := time.NewTimer(10 * time.Second)
	defer timer.Stop()
	var seen []string
	for {
		select {
		case r, open := <-ch:
			if !open {
				t.Fatalf("go-micro watcher ended waiting for %s", what)
			}
			var ids []string
			for _, n := range r.Service.Nodes {
				ids = append(ids, n.Id)
			}
			seen = append(seen, fmt.Sprintf("%s %v", r.Action, ids))
			if ok(r) {
				return r
			}
		case <-timer.C:
			t.Fatalf("go-micro watcher: no %s within 10s (seen %v)", what, seen)
		}
	}
}

func hasNode(r *gmregistry.Result, id string) bool {
	return slices.ContainsFunc(r.Service.Nodes, func(n *gmregistry.Node) bool { return n.Id == id })
}

// TestBeaconToGoMicro: what Beacon registers, go-micro's consul registry
// reads whole (version, node metadata, endpoints, node IDs), lists, watches
// and sees leave.
func TestBeaconToGoMicro(t *testing.T) {
	t.Parallel()
	br := beaconRegistry(t)
	gm := goMicroRegistry(t)
	name := uniqueName(t)
	node := func(i int) *registry.Node {
		return &registry.Node{ID: fmt.Sprintf("%s-%d", name, i), Address: fmt.Sprintf("127.0.0.1:%d", 21000+i),
			Metadata: map[string]string{"protocol": "beacon", "zone": fmt.Sprintf("z%d", i)}}
	}
	s := &registry.Service{Name: name, Version: "1.2.3", Metadata: map[string]string{"team": "a"}, Endpoints: endpoints(), Nodes: []*registry.Node{node(1)}}
	w, err := gm.Watch(gmregistry.WatchService(name))
	if err != nil {
		t.Fatal(err)
	}
	results := gmResults(t, w)
	if err := br.Register(ctxT(t), s, registry.RegisterTTL(30*time.Second)); err != nil {
		t.Fatal(err)
	}
	defer br.Deregister(ctxT(t), s)

	// GetService: go-micro's view of Beacon's node.
	eventually(t, 5*time.Second, func() error {
		got, err := gm.GetService(name)
		if err != nil {
			return err
		}
		if len(got) != 1 || len(got[0].Nodes) != 1 {
			return fmt.Errorf("go-micro sees %d versions", len(got))
		}
		g, n := got[0], got[0].Nodes[0]
		switch {
		case g.Version != "1.2.3":
			return fmt.Errorf("version %q", g.Version)
		case n.Id != name+"-1" || n.Address != "127.0.0.1:21001":
			return fmt.Errorf("node %s at %s", n.Id, n.Address)
		case !maps.Equal(n.Metadata, s.Nodes[0].Metadata):
			return fmt.Errorf("node metadata %v, want %v", n.Metadata, s.Nodes[0].Metadata)
		case !sameJSON(g.Endpoints, s.Endpoints):
			return fmt.Errorf("endpoints %s", mustJSON(g.Endpoints))
		}
		return nil
	})
	list, err := gm.ListServices()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(list, func(s *gmregistry.Service) bool { return s.Name == name }) {
		t.Errorf("go-micro's ListServices lacks %s", name)
	}

	// Watch: the first node, a second one, the second leaving.
	r := gmWait(t, results, "node 1", func(r *gmregistry.Result) bool { return r.Action != "delete" && hasNode(r, name+"-1") })
	if r.Service.Version != "1.2.3" || !sameJSON(r.Service.Endpoints, s.Endpoints) {
		t.Errorf("watch result %+v", r.Service)
	}
	s2 := &registry.Service{Name: name, Version: "1.2.3", Metadata: s.Metadata, Endpoints: endpoints(), Nodes: []*registry.Node{node(2)}}
	if err := br.Register(ctxT(t), s2, registry.RegisterTTL(30*time.Second)); err != nil {
		t.Fatal(err)
	}
	gmWait(t, results, "node 2", func(r *gmregistry.Result) bool { return r.Action != "delete" && hasNode(r, name+"-2") })
	if err := br.Deregister(ctxT(t), s2); err != nil {
		t.Fatal(err)
	}
	gmWait(t, results, "node 2 leaving", func(r *gmregistry.Result) bool {
		return r.Action == "delete" && hasNode(r, name+"-2") || r.Action == "update" && !hasNode(r, name+"-2")
	})
	if err := br.Deregister(ctxT(t), s); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() error {
		got, err := gm.GetService(name)
		if err != nil && !errors.Is(err, gmregistry.ErrNotFound) {
			return err
		}
		for _, g := range got {
			if len(g.Nodes) > 0 {
				return fmt.Errorf("go-micro still sees %d nodes", len(g.Nodes))
			}
		}
		return nil
	})
}

// TestGoMicroToBeacon: what go-micro registers, Beacon reads whole with
// go-micro's node IDs as they are, lists, watches (per service and all
// services, in both watch shapes), updates, and drops when deregistered or
// when its TTL check fails.
func TestGoMicroToBeacon(t *testing.T) {
	t.Parallel()
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			br := beaconRegistry(t, mode.opts...)
			gm := goMicroRegistry(t)
			name := uniqueName(t)
			node := func(i int) *gmregistry.Node {
				return &gmregistry.Node{Id: fmt.Sprintf("%s-7f3e-%d", name, i), Address: fmt.Sprintf("127.0.0.1:%d", 22000+i),
					Metadata: map[string]string{"protocol": "mucp", "server": "mucp", "registry": "consul", "zone": fmt.Sprintf("z%d", i)}}
			}
			svc := func(n *gmregistry.Node) *gmregistry.Service {
				return &gmregistry.Service{Name: name, Version: "2.0.0", Endpoints: gmEndpoints(), Nodes: []*gmregistry.Node{n}}
			}
			ev := registrytest.Watch(t, br, registry.WatchService(name))
			all := registrytest.Watch(t, br)
			n1 := node(1)
			if err := gm.Register(svc(n1), gmregistry.RegisterTTL(30*time.Second)); err != nil {
				t.Fatal(err)
			}
			defer gm.Deregister(svc(n1))

			e := ev.Expect(t, 5*time.Second, registry.Create, n1.Id)
			all.Expect(t, 5*time.Second, registry.Create, n1.Id)
			check := func(s *registry.Service, n *gmregistry.Node) {
				t.Helper()
				bn := s.Nodes[0]
				if s.Version != "2.0.0" || bn.ID != n.Id || bn.Address != n.Address || !maps.Equal(bn.Metadata, n.Metadata) || !sameJSON(s.Endpoints, gmEndpoints()) {
					t.Errorf("Beacon reads go-micro's node as %s %+v endpoints %s, want %+v", s.Version, bn, mustJSON(s.Endpoints), n)
				}
			}
			check(e.Service, n1)
			got, err := br.GetService(ctxT(t), name)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 || len(got[0].Nodes) != 1 {
				t.Fatalf("GetService = %d versions", len(got))
			}
			check(got[0], n1)
			list, err := br.ListServices(ctxT(t))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.ContainsFunc(list, func(s *registry.Service) bool { return s.Name == name && s.Version == "2.0.0" }) {
				t.Errorf("ListServices lacks %s 2.0.0", name)
			}
			if slices.ContainsFunc(list, func(s *registry.Service) bool { return s.Name == "consul" }) {
				t.Error("ListServices lists consul's own service")
			}

			// A second node; the first re-registered with changed
			// metadata (go-micro registers it again in full); the second
			// deregistered.
			n2 := node(2)
			if err := gm.Register(svc(n2), gmregistry.RegisterTTL(30*time.Second)); err != nil {
				t.Fatal(err)
			}
			ev.Expect(t, 5*time.Second, registry.Create, n2.Id)
			n1.Metadata["zone"] = "moved"
			if err := gm.Register(svc(n1), gmregistry.RegisterTTL(30*time.Second)); err != nil {
				t.Fatal(err)
			}
			e = ev.Expect(t, 5*time.Second, registry.Update, n1.Id)
			check(e.Service, n1)
			if err := gm.Deregister(svc(n2)); err != nil {
				t.Fatal(err)
			}
			ev.Expect(t, 5*time.Second, registry.Delete, n2.Id)
			all.Expect(t, 5*time.Second, registry.Delete, n2.Id)

			// A go-micro node that stops heartbeating: hidden once its
			// TTL check fails.
			n3 := node(3)
			if err := gm.Register(svc(n3), gmregistry.RegisterTTL(time.Second)); err != nil {
				t.Fatal(err)
			}
			defer gm.Deregister(svc(n3))
			ev.Expect(t, 5*time.Second, registry.Create, n3.Id)
			start := time.Now()
			ev.Expect(t, 5*time.Second, registry.Delete, n3.Id)
			t.Logf("go-micro node with TTL 1s and no heartbeat hidden after %v", time.Since(start))
		})
	}
}

func mustJSON(v any) string {
	js, _ := json.Marshal(v)
	return string(js)
}
