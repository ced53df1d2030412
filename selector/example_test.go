package selector_test

import (
	"context"
	"fmt"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/memory"
	"github.com/beacon-go/beacon/selector"
)

// Select returns a Next that picks a node per attempt; Done reports the
// attempt's outcome so that balancing and ejection see it.
func ExampleNew() {
	reg := memory.New()
	defer reg.Close()
	ctx := context.Background()
	reg.Register(ctx, &registry.Service{Name: "greeter", Version: "1.0.0", Nodes: []*registry.Node{
		{ID: "a", Address: "127.0.0.1:8001"}, {ID: "b", Address: "127.0.0.1:8002"},
	}})
	sel := selector.New(reg, selector.WithStrategy(selector.RoundRobin()))
	defer sel.Close()
	next, err := sel.Select(ctx, "greeter")
	if err != nil {
		fmt.Println(err)
		return
	}
	seen := map[string]bool{}
	for range 4 {
		pk, err := next()
		if err != nil {
			fmt.Println(err)
			return
		}
		seen[pk.Node.ID] = true
		if pk.Done != nil {
			pk.Done(selector.Outcome{})
		}
	}
	fmt.Println(len(seen), "nodes picked")
	// Output: 2 nodes picked
}
