package cache_test

import (
	"context"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/cache"
	"github.com/beacon-go/beacon/registry/memory"
	"github.com/beacon-go/beacon/registry/registrytest"
)

func samePtr[T any](a, b T) bool {
	return reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer()
}

// The nodes of an entry share their equal metadata and endpoints, whether
// they came with the first fetch or in watch events (each with copies of
// its own), and nodes that differ keep what is theirs.
func TestEntrySharesEqualParts(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	c := cache.New(mem, cache.WithRefreshInterval(time.Hour))
	defer c.Close()
	ctx := context.Background()
	node := func(id, zone string) *registry.Service {
		return &registry.Service{Name: "s", Version: "1", Metadata: map[string]string{"team": "t"},
			Endpoints: []*registry.Endpoint{{Name: "S.Get", Request: &registry.Value{Name: "Req", Type: "Req"}}},
			Nodes:     []*registry.Node{{ID: id, Address: "127.0.0.1:1", Metadata: map[string]string{"zone": zone}}}}
	}
	for i := range 3 { // each registered apart: the registry hands out copies
		if err := mem.Register(ctx, node(fmt.Sprintf("a%d", i), "a")); err != nil {
			t.Fatal(err)
		}
	}
	e, err := c.Entry(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	// Then through the watch: two more nodes, one in another zone.
	for _, n := range []*registry.Service{node("a3", "a"), node("b0", "b")} {
		if err := mem.Register(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	registrytest.Eventually(t, 5*time.Second, func() error {
		if n := len(e.Snapshot().Nodes); n != 5 {
			return fmt.Errorf("%d nodes", n)
		}
		return nil
	})
	snap := e.Snapshot()
	var first *registry.Node
	for _, n := range snap.Nodes {
		switch {
		case n.ID == "b0":
			if n.Metadata["zone"] != "b" {
				t.Errorf("b0's metadata: %v", n.Metadata)
			}
		case first == nil:
			first = n.Node
		case !samePtr(n.Metadata, first.Metadata):
			t.Errorf("%s does not share its node metadata with %s", n.ID, first.ID)
		}
	}
	if len(snap.Services) != 1 {
		t.Fatalf("%d versions", len(snap.Services))
	}
	// What the registry holds was not touched: its nodes keep their maps.
	got, _ := mem.GetService(ctx, "s")
	got[0].Nodes[0].Metadata["zone"] = "changed"
	if snap.Nodes[0].Metadata["zone"] == "changed" {
		t.Error("the snapshot shares a map with a registry answer")
	}
}
