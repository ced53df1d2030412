package memory_test

import (
	"context"
	"fmt"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/memory"
)

// The in-process registry: for tests and single-process programs. The
// other backends (mdns, etcd, consul, static, kubernetes) have the same
// interface.
func ExampleNew() {
	reg := memory.New()
	defer reg.Close()
	ctx := context.Background()
	svc := &registry.Service{Name: "greeter", Version: "1.0.0", Nodes: []*registry.Node{{ID: "a", Address: "127.0.0.1:8001"}}}
	if err := reg.Register(ctx, svc); err != nil {
		fmt.Println(err)
		return
	}
	got, err := reg.GetService(ctx, "greeter")
	fmt.Println(got[0].Nodes[0].Address, err)
	// Output: 127.0.0.1:8001 <nil>
}
