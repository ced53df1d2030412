package grpcgreeter_test

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/beacon-go/beacon/beacongrpc"
	"github.com/beacon-go/beacon/examples/grpcgreeter"
	"github.com/beacon-go/beacon/registry/memory"
)

func TestMain(m *testing.M) {
	beacongrpc.RegisterBalancers()
	m.Run()
}

// TestGreeterThroughBeacon: a greeter registered with beacongrpc on the
// memory registry answers through beacon:///greeter with every service
// config the example client can make.
func TestGreeterThroughBeacon(t *testing.T) {
	reg := memory.New()
	defer reg.Close()
	gs := grpc.NewServer()
	(&grpcgreeter.Server{Node: "a"}).Register(gs)
	srv, err := beacongrpc.NewServer(gs, reg, beacongrpc.Name(grpcgreeter.Name), beacongrpc.Descriptors(grpcgreeter.Files),
		beacongrpc.DrainGrace(0))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := srv.Start(ctx, ln); err != nil {
		t.Fatal(err)
	}
	defer srv.Stop(ctx)
	if eps := srv.Service().Endpoints; len(eps) != 3 {
		t.Fatalf("endpoints %v, want SayHello, Lookup, Chat", eps)
	}

	b := beacongrpc.NewBuilder(reg)
	defer b.Close()
	for _, lb := range []string{beacongrpc.LeastLoaded, "round_robin"} {
		for _, opt := range [][2]bool{{false, false}, {true, false}, {true, true}} {
			conn, err := grpc.NewClient(grpcgreeter.Target, grpc.WithResolvers(b),
				grpc.WithDefaultServiceConfig(grpcgreeter.ServiceConfig(lb, opt[0], opt[1])),
				grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatalf("%s %v: %v", lb, opt, err)
			}
			rsp, err := grpcgreeter.Hello(ctx, conn, "Ann", time.Millisecond, grpc.WaitForReady(true))
			if err != nil || rsp.Message != "Hello Ann" || rsp.Node != "a" {
				t.Fatalf("%s %v: %+v, %v", lb, opt, rsp, err)
			}
			if _, err := grpcgreeter.Hello(ctx, conn, "", 0); status.Code(err) != codes.InvalidArgument {
				t.Fatalf("%s %v: empty name: %v, want InvalidArgument", lb, opt, err)
			}
			conn.Close()
		}
	}
}
