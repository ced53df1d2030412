package otelbeacon_test

import (
	"context"
	"testing"
	"time"

	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/beacon-go/beacon/client"
	"github.com/beacon-go/beacon/otelbeacon"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/memory"
	"github.com/beacon-go/beacon/selector"
	"github.com/beacon-go/beacon/server"
	"github.com/beacon-go/beacon/transport"
)

// discard is a span processor that drops ended spans (the SDK still
// records them: sampled, attributes and all).
type discard struct{}

func (discard) OnStart(context.Context, sdktrace.ReadWriteSpan) {}
func (discard) OnEnd(sdktrace.ReadOnlySpan)                     {}
func (discard) Shutdown(context.Context) error                  { return nil }
func (discard) ForceFlush(context.Context) error                { return nil }

type instFunc func(b *testing.B) *otelbeacon.Instrumentation

// setups are the benchmarks' cases: no interceptors, the otel interceptors
// over no-op providers, and over the SDK's providers (every span sampled
// and recorded, then dropped; metrics aggregated by a manual reader).
var setups = []struct {
	name string
	inst instFunc
}{
	{"none", func(*testing.B) *otelbeacon.Instrumentation { return nil }},
	{"otel-noop", func(b *testing.B) *otelbeacon.Instrumentation {
		i, err := otelbeacon.New(otelbeacon.WithTracerProvider(tracenoop.NewTracerProvider()),
			otelbeacon.WithMeterProvider(metricnoop.NewMeterProvider()))
		if err != nil {
			b.Fatal(err)
		}
		return i
	}},
	{"otel-sdk", func(b *testing.B) *otelbeacon.Instrumentation {
		tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(discard{}), sdktrace.WithSampler(sdktrace.AlwaysSample()))
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
		b.Cleanup(func() { tp.Shutdown(context.Background()); mp.Shutdown(context.Background()) })
		i, err := otelbeacon.New(otelbeacon.WithTracerProvider(tp), otelbeacon.WithMeterProvider(mp))
		if err != nil {
			b.Fatal(err)
		}
		return i
	}},
}

// inproc is a transport.Caller that hands requests to a server's
// dispatch in this goroutine: calls without a network, so that the
// interceptors' cost shows.
type inproc struct{ h transport.Handler }

func (c inproc) Call(ctx context.Context, _ string, req *transport.Request, rsp *transport.Response) error {
	c.h.Serve(ctx, req, rsp)
	return nil
}

func (inproc) Close() error { return nil }

// BenchmarkCallInProcess is BenchmarkCall without the network: the client
// calls the server's dispatch (server.Handler) in its own goroutine, so
// the figures are the client's and the server's work alone, interceptors
// included.
func BenchmarkCallInProcess(b *testing.B) {
	for _, tc := range setups {
		b.Run(tc.name, func(b *testing.B) {
			inst := tc.inst(b)
			sreg, reg := memory.New(), memory.New()
			defer sreg.Close()
			defer reg.Close()
			sopts := []server.Option{server.Name("echo"), server.ID("n1"), server.Address("127.0.0.1:0"),
				server.Registry(sreg), server.DrainGrace(time.Millisecond), server.Logger(quiet)}
			selOpts := []selector.Option{selector.WithLogger(quiet), selector.WithProtocols("inproc")}
			copts := []client.Option{client.Logger(quiet)}
			if inst != nil {
				sopts = append(sopts, server.WithInterceptors(inst.ServerInterceptor()))
				selOpts = append(selOpts, inst.SelectorOptions()...)
				copts = append(copts, inst.ClientOptions()...)
			}
			s, err := server.New(sopts...)
			if err != nil {
				b.Fatal(err)
			}
			if err := server.HandleFunc(s, "Echo.Call", func(ctx context.Context, req *Req, rsp *Rsp) error { return nil }); err != nil {
				b.Fatal(err)
			}
			if err := s.Start(context.Background()); err != nil {
				b.Fatal(err)
			}
			defer func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				s.Stop(ctx)
			}()
			err = reg.Register(context.Background(), &registry.Service{Name: "echo", Version: "1",
				Nodes: []*registry.Node{{ID: "n1", Address: "127.0.0.1:1", Metadata: map[string]string{registry.MetaProtocol: "inproc"}}}})
			if err != nil {
				b.Fatal(err)
			}
			sel := selector.New(reg, selOpts...)
			defer sel.Close()
			c := client.New(sel, append(copts, client.WithCaller("inproc", inproc{s.Handler()}))...)
			defer c.Close()
			ctx := context.Background()
			if err := c.Call(ctx, "echo", "Echo.Call", &Req{}, new(Rsp)); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if err := c.Call(ctx, "echo", "Echo.Call", &Req{}, new(Rsp)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkCall compares a call (client and server in this process, over
// 127.0.0.1) in the setups, serial and with 64 callers.
func BenchmarkCall(b *testing.B) {
	for _, tc := range setups {
		for _, conc := range []int{1, 64} {
			b.Run(tc.name+map[int]string{1: "/serial", 64: "/c=64"}[conc], func(b *testing.B) {
				inst := tc.inst(b)
				reg := memory.New()
				defer reg.Close()
				sopts := []server.Option{server.Name("echo"), server.ID("n1"), server.Address("127.0.0.1:0"),
					server.Registry(reg), server.DrainGrace(time.Millisecond), server.Logger(quiet)}
				selOpts := []selector.Option{selector.WithLogger(quiet)}
				copts := []client.Option{client.Logger(quiet)}
				if inst != nil {
					sopts = append(sopts, server.WithInterceptors(inst.ServerInterceptor()))
					selOpts = append(selOpts, inst.SelectorOptions()...)
					copts = append(copts, inst.ClientOptions()...)
				}
				s, err := server.New(sopts...)
				if err != nil {
					b.Fatal(err)
				}
				if err := server.HandleFunc(s, "Echo.Call", func(ctx context.Context, req *Req, rsp *Rsp) error { return nil }); err != nil {
					b.Fatal(err)
				}
				if err := s.Start(context.Background()); err != nil {
					b.Fatal(err)
				}
				defer func() {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					defer cancel()
					s.Stop(ctx)
				}()
				sel := selector.New(reg, selOpts...)
				defer sel.Close()
				c := client.New(sel, copts...)
				defer c.Close()
				ctx := context.Background()
				if err := c.Call(ctx, "echo", "Echo.Call", &Req{}, new(Rsp)); err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				b.ResetTimer()
				if conc == 1 {
					for b.Loop() {
						if err := c.Call(ctx, "echo", "Echo.Call", &Req{}, new(Rsp)); err != nil {
							b.Fatal(err)
						}
					}
					return
				}
				b.SetParallelism(conc / 2) // 2 CPUs
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if err := c.Call(ctx, "echo", "Echo.Call", &Req{}, new(Rsp)); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
	}
}
