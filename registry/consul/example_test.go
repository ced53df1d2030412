package consul_test

import (
	"context"
	"log"
	"time"

	"github.com/beacon-go/beacon/registry/consul"
)

// A consul registry (agent services with TTL checks; go-micro's tags). With
// ACLs: consul.WithToken(token); over HTTPS: consul.WithTLSFiles(ca, cert, key).
func ExampleNew() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	reg, err := consul.New(ctx, consul.WithAddrs("127.0.0.1:8500"))
	if err != nil {
		log.Fatal(err)
	}
	defer reg.Close()
}
