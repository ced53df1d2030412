package beacongrpc_test

import (
	"context"
	"fmt"
	"runtime"
	"sync"
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

// BenchmarkCallGRPCInterleaved makes the same calls as BenchmarkCallGRPC,
// alternating a call by name through Beacon and a plain grpc-go call with a
// deadline in every goroutine, so that both see the same load of the
// machine (figures from a shared machine stay comparable); it reports the
// mean latency of each kind (beacon-µs, grpc-µs) and, at concurrency c,
// the time per call of each kind as throughput (latency / c).
//
//	go test -run X -bench CallGRPCInterleaved -benchtime 3s ./beacongrpc
func BenchmarkCallGRPCInterleaved(b *testing.B) {
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
	req := wrapperspb.String("Ann")
	calls := [2]func() error{
		func() error {
			rsp := new(wrapperspb.StringValue)
			return cl.Call(context.Background(), "greeter", "helloworld.Greeter.SayHello", req, rsp)
		},
		func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return cc.Invoke(ctx, grpctest.SayHello, req, new(wrapperspb.StringValue))
		},
	}
	for _, c := range []int{1, 64} {
		b.Run(fmt.Sprintf("c=%d", c), func(b *testing.B) {
			for _, call := range calls {
				if err := call(); err != nil {
					b.Fatal(err)
				}
			}
			var mu sync.Mutex
			var total [2]time.Duration
			var count [2]int
			work := func(next func() bool) {
				var sum [2]time.Duration
				var cnt [2]int
				for i := 0; next(); i++ {
					k := i % 2
					start := time.Now()
					if err := calls[k](); err != nil {
						b.Error(err)
						return
					}
					sum[k] += time.Since(start)
					cnt[k]++
				}
				mu.Lock()
				for k := range 2 {
					total[k] += sum[k]
					count[k] += cnt[k]
				}
				mu.Unlock()
			}
			if c == 1 {
				work(b.Loop)
			} else {
				b.SetParallelism(max(1, c/runtime.GOMAXPROCS(0)))
				b.RunParallel(func(pb *testing.PB) { work(pb.Next) })
			}
			for k, name := range []string{"beacon", "grpc"} {
				if count[k] == 0 {
					continue
				}
				lat := total[k] / time.Duration(count[k])
				b.ReportMetric(float64(lat.Nanoseconds())/1e3, name+"-µs")
				if c > 1 {
					b.ReportMetric(float64(lat.Nanoseconds())/1e3/float64(c), name+"-µs/call")
				}
			}
		})
	}
}
