package consul

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/registrytest"
)

// TestForeignDuplicateID: a catalog entry registered on another consul node
// (PUT /v1/catalog/register, the way any tool with catalog write can) that
// reuses a live Beacon node's ID never takes the node's place: GetService,
// ListServices and watchers keep the real address, before and after the
// real node's check fails. Three forgeries: a bare copy, one with a forged
// passing "beacon-ttl:<id>" check, and one that also forges the node's
// serfHealth check.
func TestForeignDuplicateID(t *testing.T) {
	t.Parallel()
	forgeries := []struct {
		name   string
		checks func(id string) api.HealthChecks
	}{
		{"bare copy", func(string) api.HealthChecks { return nil }},
		{"forged TTL check", func(id string) api.HealthChecks {
			return api.HealthChecks{{CheckID: checkID(id), Name: "Beacon TTL", ServiceID: id, Status: api.HealthPassing}}
		}},
		{"forged TTL and serfHealth checks", func(id string) api.HealthChecks {
			return api.HealthChecks{
				{CheckID: "serfHealth", Name: "Serf Health Status", Status: api.HealthPassing},
				{CheckID: checkID(id), Name: "Beacon TTL", ServiceID: id, Status: api.HealthPassing},
			}
		}},
	}
	for i, f := range forgeries {
		t.Run(f.name, func(t *testing.T) {
			t.Parallel()
			r := newRegistry(t)
			raw := rawClient(t, agent.Addr())
			name := uniqueName(t)
			s := service(name, "1", 0, 1)
			id, realAddr := s.Nodes[0].ID, s.Nodes[0].Address
			ev := registrytest.Watch(t, r, registry.WatchService(name))
			if err := r.Register(ctxT(t), s, registry.RegisterTTL(time.Minute)); err != nil {
				t.Fatal(err)
			}
			defer r.Deregister(ctxT(t), s)
			ev.Expect(t, 5*time.Second, registry.Create, id)

			// The forgery: the real record's Meta and tags, another
			// address, on another consul node.
			as, _, err := raw.Agent().Service(id, nil)
			if err != nil {
				t.Fatal(err)
			}
			evilNode := fmt.Sprintf("evil-%d-%s", i, name)
			evilAddr := "127.0.0.66"
			if _, err := raw.Catalog().Register(&api.CatalogRegistration{
				Node: evilNode, Address: evilAddr, SkipNodeUpdate: false,
				Service: &api.AgentService{ID: id, Service: name, Address: evilAddr, Port: 6666, Tags: as.Tags, Meta: as.Meta},
				Checks:  f.checks(id),
			}, nil); err != nil {
				t.Fatal(err)
			}
			defer raw.Catalog().Deregister(&api.CatalogDeregistration{Node: evilNode}, nil)

			// A second real node, registered after the forgery: once the
			// watcher has it, its query has seen the forgery too.
			s2 := service(name, "1", 1, 1)
			if err := r.Register(ctxT(t), s2, registry.RegisterTTL(time.Minute)); err != nil {
				t.Fatal(err)
			}
			defer r.Deregister(ctxT(t), s2)
			for {
				e := nextEvent(t, ev, 5*time.Second)
				if e.Service.Nodes[0].ID == s2.Nodes[0].ID {
					break
				}
				t.Fatalf("watcher got %v %s at %s, want only the Create of %s", e.Type, e.Service.Nodes[0].ID, e.Service.Nodes[0].Address, s2.Nodes[0].ID)
			}
			checkAddr := func(want string) {
				t.Helper()
				got, err := r.GetService(ctxT(t), name)
				if err != nil {
					t.Fatal(err)
				}
				n := registry.Flatten(got)[id]
				switch {
				case want == "" && n != nil:
					t.Errorf("GetService shows %s at %s, want it hidden", id, n.Nodes[0].Address)
				case want != "" && (n == nil || n.Nodes[0].Address != want):
					t.Errorf("GetService shows %s as %+v, want address %s", id, n, want)
				}
				list, err := r.ListServices(ctxT(t))
				if err != nil {
					t.Fatal(err)
				}
				n = registry.Flatten(list)[id]
				if want != "" && (n == nil || n.Nodes[0].Address != want) || want == "" && n != nil {
					t.Errorf("ListServices shows %s as %+v, want address %q", id, n, want)
				}
			}
			checkAddr(realAddr)

			// The real node's check fails (a crash): the node is hidden,
			// the forgery does not take its place.
			if err := raw.Agent().UpdateTTL(checkID(id), "test: crashed", api.HealthCritical); err != nil {
				t.Fatal(err)
			}
			ev.Expect(t, 5*time.Second, registry.Delete, id)
			s3 := service(name, "1", 2, 1)
			if err := r.Register(ctxT(t), s3, registry.RegisterTTL(time.Minute)); err != nil {
				t.Fatal(err)
			}
			defer r.Deregister(ctxT(t), s3)
			e := nextEvent(t, ev, 5*time.Second)
			if e.Service.Nodes[0].ID != s3.Nodes[0].ID {
				t.Fatalf("watcher got %v %s at %s, want the Create of %s", e.Type, e.Service.Nodes[0].ID, e.Service.Nodes[0].Address, s3.Nodes[0].ID)
			}
			checkAddr("")

			// Its next heartbeat brings it back, at its own address.
			if err := r.Register(ctxT(t), s, registry.RegisterTTL(time.Minute)); err != nil {
				t.Fatal(err)
			}
			e = ev.Expect(t, 5*time.Second, registry.Create, id)
			if e.Service.Nodes[0].Address != realAddr {
				t.Errorf("back at %s, want %s", e.Service.Nodes[0].Address, realAddr)
			}
			checkAddr(realAddr)
		})
	}
}

// nextEvent returns the watcher's next event (Expect keeps none pending in
// the tests that use this).
func nextEvent(t *testing.T, ev *registrytest.Events, wait time.Duration) *registry.Event {
	t.Helper()
	select {
	case e, ok := <-ev.C:
		if !ok {
			t.Fatal("watcher ended")
		}
		return e
	case <-time.After(wait):
		t.Fatalf("no event within %v", wait)
		return nil
	}
}

// TestConsulOwnService: the "consul" service that consul's servers register
// for themselves is no application's: not listed, not found, not watched.
func TestConsulOwnService(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	raw := rawClient(t, agent.Addr())
	if entries, _, err := raw.Health().Service("consul", "", false, nil); err != nil || len(entries) == 0 {
		t.Fatalf("the agent has no consul service to leave out: %v, %v", entries, err)
	}
	if got, err := r.GetService(ctxT(t), "consul"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("GetService(consul) = %v, %v; want ErrNotFound", got, err)
	}
	list, err := r.ListServices(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range list {
		if s.Name == "consul" {
			t.Errorf("ListServices lists consul's own service: %+v", s.Nodes)
		}
	}
	// An all-services watcher: a service registered after the watch
	// started arrives, and consul's never did.
	ev := registrytest.Watch(t, r)
	s := service(uniqueName(t), "1", 0, 1)
	if err := r.Register(ctxT(t), s, registry.RegisterTTL(time.Minute)); err != nil {
		t.Fatal(err)
	}
	defer r.Deregister(ctxT(t), s)
	for {
		e := nextEvent(t, ev, 10*time.Second)
		if e.Service.Name == "consul" {
			t.Errorf("watcher reported consul's own service: %v %s", e.Type, e.Service.Nodes[0].ID)
		}
		if e.Type == registry.Create && e.Service.Nodes[0].ID == s.Nodes[0].ID {
			break
		}
	}
}
