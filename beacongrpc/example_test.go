package beacongrpc_test

import (
	"context"
	"fmt"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/beacon-go/beacon/beacongrpc"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/memory"
)

// A gRPC client that finds the servers of "greeter" in a Beacon registry
// and balances its calls over them with Beacon's least-loaded strategy.
func Example() {
	// Once, at program start: makes "beacon_least_loaded" (and
	// beacon_round_robin, beacon_random) known to service configs.
	beacongrpc.RegisterBalancers()

	// Any Beacon registry (memory, mdns, etcd, consul).
	reg := memory.New()
	defer reg.Close()

	// Two gRPC servers (grpc-go's standard health service), registered by
	// hand with protocol grpc.
	svc := &registry.Service{Name: "greeter", Version: "1.2.0"}
	for i := range 2 {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			panic(err)
		}
		srv := grpc.NewServer()
		healthpb.RegisterHealthServer(srv, health.NewServer())
		go srv.Serve(lis)
		defer srv.Stop()
		svc.Nodes = append(svc.Nodes, &registry.Node{
			ID:       fmt.Sprintf("greeter-%d", i),
			Address:  lis.Addr().String(),
			Metadata: map[string]string{registry.MetaProtocol: registry.ProtocolGRPC},
		})
	}
	if err := reg.Register(context.Background(), svc); err != nil {
		panic(err)
	}

	// The resolver, passed per client: no global registration.
	b := beacongrpc.NewBuilder(reg)
	defer b.Close()
	conn, err := grpc.NewClient("beacon:///greeter?version=1.2.0",
		grpc.WithResolvers(b),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"beacon_least_loaded":{}}]}`),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	)
	if err != nil {
		panic(err)
	}
	defer conn.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rsp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		panic(err)
	}
	fmt.Println(rsp.GetStatus())
	// Output: SERVING
}
