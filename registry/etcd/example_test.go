package etcd_test

import (
	"context"
	"log"
	"time"

	"github.com/beacon-go/beacon/registry/etcd"
)

// An etcd registry (go-micro's key layout, leases as TTLs). With TLS and
// a user: etcd.WithTLSFiles(ca, cert, key), etcd.WithAuth(user, password).
func ExampleNew() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	reg, err := etcd.New(ctx, etcd.WithAddrs("127.0.0.1:2379"))
	if err != nil {
		log.Fatal(err) // the cause: refused, TLS, auth, ... (registry.ErrPermission for credentials)
	}
	defer reg.Close()
}
