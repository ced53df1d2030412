package static_test

import (
	"context"
	"fmt"

	"github.com/beacon-go/beacon/registry/static"
)

// Fixed nodes per service, from the same string as --registry_address
// (static.WithFile watches a JSON or YAML file instead).
func ExampleNew() {
	reg, err := static.New(static.WithInline("greeter=127.0.0.1:8001,127.0.0.1:8002;orders=127.0.0.1:9000"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer reg.Close()
	svcs, _ := reg.GetService(context.Background(), "greeter")
	fmt.Println(len(svcs[0].Nodes), "nodes")
	// Output: 2 nodes
}
