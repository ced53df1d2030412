package mdns_test

import (
	"context"
	"log"

	"github.com/beacon-go/beacon/registry/mdns"
)

// The zero-configuration LAN registry, Beacon's default. It multicasts on
// the LAN: tests run it only inside private network namespaces.
func ExampleNew() {
	reg, err := mdns.New(context.Background(), mdns.WithInterfaceName("eth0"))
	if err != nil {
		log.Fatal(err)
	}
	defer reg.Close()
}
