package beacongrpc_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/beacon-go/beacon/internal/grpctest"
	"github.com/beacon-go/beacon/registry/memory"
)

// BenchmarkCallGRPC: one call by name through Beacon's client to a gRPC
// node, beside a plain grpc-go call (cc.Invoke) to the same server, in one
// run, at concurrency 1 and 64 (grpc-go also with a 5 s deadline per call,
// as Beacon's client sends one on every attempt); protobuf both ways (google.protobuf.StringValue,
// wire-compatible with the greeter's messages). The server (grpc-go with
// dynamicpb messages) is shared, so the difference is the client's: name
// lookup, selection, Beacon's codec and metadata, the Caller's stats
// tracking and copies.
//
//	go test -run X -bench CallGRPC -benchtime 3s -count 3 ./beacongrpc
func BenchmarkCallGRPC(b *testing.B) {
	setup(b)
	reg := memory.New()
	defer reg.Close()
	n := startNode(b, reg, "bench")
	cl, _ := newClient(b, reg, nil)
	cc, err := grpc.NewClient("passthrough:///"+n.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()
	ctx := context.Background()
	req := wrapperspb.String("Ann")
	beacon := func() error {
		rsp := new(wrapperspb.StringValue)
		if err := cl.Call(ctx, "greeter", "helloworld.Greeter.SayHello", req, rsp); err != nil {
			return err
		}
		if rsp.Value != "Hello Ann" {
			return fmt.Errorf("reply %q", rsp.Value)
		}
		return nil
	}
	plain := func() error {
		rsp := new(wrapperspb.StringValue)
		if err := cc.Invoke(ctx, grpctest.SayHello, req, rsp); err != nil {
			return err
		}
		if rsp.Value != "Hello Ann" {
			return fmt.Errorf("reply %q", rsp.Value)
		}
		return nil
	}
	// Beacon sends every attempt's deadline (the request timeout, 5 s by
	// default): grpc-go then sends grpc-timeout and the server arms a timer.
	plainDeadline := func() error {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		rsp := new(wrapperspb.StringValue)
		if err := cc.Invoke(ctx, grpctest.SayHello, req, rsp); err != nil {
			return err
		}
		if rsp.Value != "Hello Ann" {
			return fmt.Errorf("reply %q", rsp.Value)
		}
		return nil
	}
	for _, c := range []int{1, 64} {
		for _, k := range []struct {
			name string
			call func() error
		}{{"beacon-by-name", beacon}, {"grpc-go", plain}, {"grpc-go+deadline", plainDeadline}} {
			b.Run(fmt.Sprintf("%s/c=%d", k.name, c), func(b *testing.B) {
				if err := k.call(); err != nil { // warm: connections, caches
					b.Fatal(err)
				}
				b.ReportAllocs()
				if c == 1 {
					for b.Loop() {
						if err := k.call(); err != nil {
							b.Fatal(err)
						}
					}
					return
				}
				b.SetParallelism(max(1, c/runtime.GOMAXPROCS(0)))
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if err := k.call(); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
	}
}
